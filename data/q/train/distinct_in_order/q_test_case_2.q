result:solve[1 1 1 2]; show result;
