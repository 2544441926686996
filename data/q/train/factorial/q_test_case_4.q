result:solve[3]; show result;
