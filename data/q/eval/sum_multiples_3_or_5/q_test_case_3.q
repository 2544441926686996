result:solve[1]; show result;
