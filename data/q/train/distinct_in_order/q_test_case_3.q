result:solve[5 4 3]; show result;
