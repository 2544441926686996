result:solve[7 7 8]; show result;
