result:solve["q language"]; show result;
