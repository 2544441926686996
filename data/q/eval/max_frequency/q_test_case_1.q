result:solve[1 2 2 3 3 3]; show result;
