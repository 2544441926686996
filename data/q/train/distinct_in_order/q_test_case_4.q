result:solve[7 7 8 8 9]; show result;
