// libudev as Swift sees it.
#include <libudev.h>
