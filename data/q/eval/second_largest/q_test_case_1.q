result:solve[5 1 5 3]; show result;
