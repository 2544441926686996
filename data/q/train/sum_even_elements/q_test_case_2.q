result:solve[-4 -3 10]; show result;
