result:solve[1 2 3]; show result;
