result:solve["kdb+"]; show result;
