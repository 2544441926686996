result:solve[4 4 4 4]; show result;
