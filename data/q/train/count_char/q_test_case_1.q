result:solve["banana";"a"]; show result;
