result:solve[1 3 5 7]; show result;
