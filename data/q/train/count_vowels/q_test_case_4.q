result:solve["Programming in q"]; show result;
