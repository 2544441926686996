result:solve[1 -1;1 1]; show result;
