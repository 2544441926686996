result:solve["abba"]; show result;
