/*
 * sched.c - the scheduler registry: the one list every scheduler is added to.
 */
#include <string.h>

#include "lb_sched.h"

static const struct lb_sched_ops *const schedulers[] = {
    &lb_sched_rr,
    &lb_sched_wlc,
};

const struct lb_sched_ops *lb_sched_find(const char *name)
{
    for (size_t i = 0; i < sizeof(schedulers) / sizeof(schedulers[0]); i++)
        if (strncmp(schedulers[i]->name, name, LB_SCHED_NAME_MAX) == 0)
            return schedulers[i];
    return NULL;
}
