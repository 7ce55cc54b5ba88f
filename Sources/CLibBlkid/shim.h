// libblkid (util-linux) as Swift sees it: partition table and file system signatures.
#include <blkid.h>
