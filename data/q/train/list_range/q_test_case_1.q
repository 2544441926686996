result:solve[3 9 1 7]; show result;
