result:solve[5]; show result;
