result:solve[20]; show result;
