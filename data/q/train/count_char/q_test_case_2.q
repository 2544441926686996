result:solve["mississippi";"s"]; show result;
