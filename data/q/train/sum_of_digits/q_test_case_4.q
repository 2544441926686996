result:solve[99999]; show result;
