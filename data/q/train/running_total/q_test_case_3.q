result:solve[0 0 1]; show result;
