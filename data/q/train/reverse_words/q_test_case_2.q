result:solve["one two three"]; show result;
