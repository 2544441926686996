result:solve[`apple`banana`apricot`cherry;"ap"]; show result;
