result:solve[10 20 30]; show result;
