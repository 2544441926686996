result:solve[100 7 8]; show result;
