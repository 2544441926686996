result:solve[2 -8 6 0]; show result;
