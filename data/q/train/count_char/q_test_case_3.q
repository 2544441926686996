result:solve["hello";"z"]; show result;
