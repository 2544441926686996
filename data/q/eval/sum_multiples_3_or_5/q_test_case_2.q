result:solve[16]; show result;
