result:solve[5 -2 7]; show result;
