result:solve[2 0 3;5 9 4]; show result;
