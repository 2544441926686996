result:solve["rhythm"]; show result;
