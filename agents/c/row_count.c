#include "roam.h"

/* The number of rows of the sales table. */
ROAM_EXPORT(ROAM_QUERY_EXPORT) void row_count(void) {
    int64_t sales = roam_open("sales"); /* needs the capability table:sales */
    roam_rows rows;
    int64_t status = sales < 0 ? sales : roam_query((uint32_t)sales, "SELECT id FROM sales", NULL, &rows);
    if (status < 0) {
        roam_fail_call("cannot query the sales table", status);
        return;
    }
    roam_reader row;
    uint64_t cells, n = 0;
    int next;
    while ((next = roam_rows_next(&rows, &row, &cells)) > 0) n++;
    if (next < 0) {
        roam_fail_call("cannot read the sales", next);
        return;
    }
    roam_buf out = {0};
    roam_put_uint(&out, n);
    roam_ok(&out);
}
