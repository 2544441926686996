result:solve[7 8 7]; show result;
