# Broker sinks (issue 15): a broker target's full URL, credentials included, encrypted.

from django.db import migrations, models


class Migration(migrations.Migration):

    dependencies = [
        ('pubsubpull', '0013_admin_indexes'),
    ]

    operations = [
        migrations.AddField(
            model_name='subscription',
            name='broker_target',
            field=models.TextField(blank=True, default='', editable=False, help_text='encrypted broker URL'),
        ),
        migrations.AlterField(
            model_name='subscription',
            name='target',
            field=models.CharField(help_text='https URL, a broker URL (password masked), or python:<dotted.path>', max_length=2000),
        ),
    ]
