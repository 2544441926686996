result:solve["q is fun"]; show result;
