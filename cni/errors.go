package cni

import "syscall"

var errExist = syscall.EEXIST
