result:solve["ab c"]; show result;
