result:solve[10 20 30 40;1 1 1 1]; show result;
