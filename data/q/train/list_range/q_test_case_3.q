result:solve[-10 4]; show result;
