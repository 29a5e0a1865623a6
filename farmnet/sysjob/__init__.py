"""The system job: post commands, Wake-on-LAN and events run as tasks on the renders (Afanasy's names)."""
