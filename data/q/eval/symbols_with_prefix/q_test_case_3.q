result:solve[`xa`xb`xc;"x"]; show result;
