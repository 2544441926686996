result:solve["aaaa";"a"]; show result;
