result:solve[0]; show result;
