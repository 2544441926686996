result:solve[5 5 5]; show result;
