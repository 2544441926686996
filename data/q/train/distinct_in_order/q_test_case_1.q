result:solve[3 1 3 2 1]; show result;
