result:solve[1234]; show result;
