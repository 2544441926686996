result:solve[5 0 -5 6 7]; show result;
