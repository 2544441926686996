result:solve["hello"]; show result;
