result:solve["AEIxyz"]; show result;
